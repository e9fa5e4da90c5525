"""Deployment tools that need both a bundle's export side and its runtime: TensorRT engines (``trt_build``, the
builder behind ``vaedeploy build``) and Triton model repositories (``triton_repo``). They sit above ``export`` and
``runtime`` so that neither copies the other's pieces (docs/architecture.md)."""
