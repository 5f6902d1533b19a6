"""Between the user's data and the model's tensors: images checked and turned into the model's input
(images.py, preprocess.py), prompts brought to the model's frame (prompts.py), masks post-processed (masks.py)."""
