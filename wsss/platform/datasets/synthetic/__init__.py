"""The built-in synthetic dataset: WSSS made hard in the ways the LID data is hard.

What it builds in, and why:
- Each object class is a *shape* (its body outline) plus a *part* (a small distinctive patch
  whose colour and pattern identify it). Classes share shapes and parts pairwise, so neither
  alone names the class, and bodies are filled with a few textures every class shares: the
  discriminative evidence sits in the part and the outline, so raw CAMs under-cover bodies as
  they do on real photos.
- Cluttered textured backgrounds with distractors of no class: bodies without a part, and
  parts on shapeless blobs, so that neither cue alone is enough.
- Zipf-distributed class frequencies (the top classes carry about half the labels).
- A dominant class (`person` by default) that co-occurs with other classes most of the time,
  carries small "accessory" classes on top of it, and whose image-level label is dropped from
  a share of the training images that contain it.
- Train images have image-level labels only; val and test have complete labels and palette
  masks with a 255 band at object borders (as VOC). The train masks and true labels are kept
  apart in `oracle/` for upper-bound experiments; the weak pipeline never reads them.

The set is written in the PASCAL VOC 2012 layout plus `classes.txt`, and imported with the VOC
adapter, so the built-in set runs through the same code as real data. Every image is drawn from
its own seed (dataset seed, split, index), so the set is identical whatever the worker count.
With `awkward_files` on, the first train and val images are stored the ways users' files come
(grey, RGBA, 16-bit, CMYK, EXIF-turned, 1x1, 10000x200), their masks resized with them, so
a run meets them in every step.
"""
