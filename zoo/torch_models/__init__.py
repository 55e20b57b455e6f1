"""PyTorch twins. Each file here has a Flax twin in `zoo/flax_models/` with the same names and order."""
