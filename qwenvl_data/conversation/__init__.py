"""Private: from a raw record to torchtune ``Message`` objects (record layouts, field reading, media parts).
The public names are in ``qwenvl_data.datasets`` and ``qwenvl_data.transform``."""
