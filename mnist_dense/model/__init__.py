"""The network, its training loop and its augmentation."""
