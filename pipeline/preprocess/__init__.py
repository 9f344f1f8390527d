"""The thesis preprocessing (Section 4.2.2), one module per step, composed per study in `study`.

Every step is pure: display-space float32 images in, images, decisions and affine transforms out.
"""
