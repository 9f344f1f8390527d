"""The projection renderer: a second, independently designed synthetic X-ray world.

Anatomy is made of 3-D solids whose line integrals are computed analytically along the rays,
turned into a radiograph through a detector chain (heel effect, scatter, quantum and electronic
noise, blur, logarithm, vendor processing) and then overlaid with what a radiographer burns in.
It shares nothing with `train.phantoms` but the output contract (`RenderedView`), so what one
renderer gets wrong the other does not share.
"""
