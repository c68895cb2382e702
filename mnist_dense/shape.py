"""What an MNIST example is: a 28x28 grayscale digit, flattened to 784 pixels; 10 classes."""

SIDE = 28
PIXELS = SIDE * SIDE
CLASSES = 10
