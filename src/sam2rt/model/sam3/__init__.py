"""SAM 3 (Segment Anything with Concepts): a text phrase or an exemplar box finds every instance.

The detector's parts, each in its own file, with the parameter names of Meta's `sam3` checkpoint (`detector.*`
keys of `sam3.pt`), so the official weights load unchanged.
"""
