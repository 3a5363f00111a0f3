"""Private: from a media reference to pixel patches (reference resolution, image and video decoding, bit depth,
resizing, patch layout). The public names are in ``qwenvl_data.image`` and ``qwenvl_data.video``."""
