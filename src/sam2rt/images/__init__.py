"""Images: the image predictor (prompts to masks, predictor.py) and segment-everything (mask_generator.py, with
its crops and boxes)."""
