"""The parts of "segment everything": point grids and crops, boxes and their NMS, RLE encoding."""
