"""Flax NNX twins. Each file here has a PyTorch twin in `zoo/torch_models/` with the same names and order.
Inputs are channels-last (NHWC); activations go back to C,H,W order before flattening so the
checkpoint's linear weights (PyTorch layout) apply unchanged."""
