"""Private: from messages to token ids and labels (the official chat template, truncation). The public names are
in ``qwenvl_data.tokenizer`` and ``qwenvl_data.transform``."""
