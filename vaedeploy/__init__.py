"""vaedeploy: train, export and serve the VAE family."""

__version__ = "0.1.0"


def __getattr__(name):
    # PEP 562: `from vaedeploy import load` loads the runtime on first use, so `import vaedeploy` stays light and the
    # onnxruntime path never imports torch.
    if name == "load":
        from .runtime import load

        return load
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
