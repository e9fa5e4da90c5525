"""vaedeploy: train, export and serve the VAE family."""

__version__ = "0.1.0"
