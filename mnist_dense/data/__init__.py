"""The digits: reading MNIST's IDX files, normalizing them, drawing rare forms onto them."""
