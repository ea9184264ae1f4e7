"""Images: from what users pass to uint8 tensors (decoding needs no torch).

=================  ==================================================================
``decoding``       :func:`load_image`: any input to an RGB PIL image, or
                   :class:`~featurize.exceptions.ImageDecodeError` with a reason
``pillow``         Pillow's global settings while featurize decodes, its formats
``sniffing``       what data that does not decode is (HTML, text, SVG, HEIC...)
``colour``         the colour policy: modes, 16-bit, float and transparency to RGB
``folder``         :func:`load_image_folder`, :func:`list_images` (folder-per-class)
``inputs``         :func:`as_sources`: what users pass -> one list of sources
``datasets``       :func:`sample_images`: the bundled 4-class clothing sample
``preprocessing``  :class:`Preprocessing` (resize, crop, mean, std) of a network
``data``           :class:`Decoder` (a file read once: hashed and decoded),
                   :func:`decode_in_threads`, :func:`collate`, :func:`resize_crop`
=================  ==================================================================
"""
