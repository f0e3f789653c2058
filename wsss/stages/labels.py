"""What the values of a label map mean, for every step: 0 is background, 1..K the object
classes, `IGNORE_INDEX` pixels that training and scoring skip (VOC's "void"); and the colours
label maps are drawn and saved in."""

BACKGROUND_INDEX = 0
IGNORE_INDEX = 255


def voc_palette() -> list[int]:
    """PASCAL VOC's colour map, 256 RGB triples flattened (index 255 is VOC's cream ignore)."""
    palette = []
    for index in range(256):
        r = g = b = 0
        code = index
        for bit in range(8):
            r |= ((code >> 0) & 1) << (7 - bit)
            g |= ((code >> 1) & 1) << (7 - bit)
            b |= ((code >> 2) & 1) << (7 - bit)
            code >>= 3
        palette.extend((r, g, b))
    return palette
