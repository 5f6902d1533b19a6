"""`sam2rt annotate`: detection boxes to masks, written as COCO and YOLO-seg datasets.

images.py segments the boxes of images (one ImagePredictor call per image), videos.py tracks the boxes of a
video's key frames through the video, ray.py spreads images over a Ray cluster. Finished items are kept in
`<output>/.parts/`, so an interrupted run resumes where it stopped.
"""
