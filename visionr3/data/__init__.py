"""Dataset rows: the verl dataset class that loads images through :mod:`visionr3.processing`."""
