"""Values that the data, the model's loss and evaluation must agree on."""

IGNORE_LABEL_ID = -100  # in-memory ignore value; on disk the ignore label is metadata.ignore_label_id (0)
