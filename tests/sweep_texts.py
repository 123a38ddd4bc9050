"""Sweep texts that several test modules parse (the identity tests pin the hashes of their points)."""

# A plain strided, padded conv2d point run by torch.
CONV_SWEEP = """
layer = "conv2d"
implementations = ["torch"]
[params]
batch = 2
in_channels = 3
out_channels = 4
size = 9
kernel = 3
stride = 2
padding = 1
"""
