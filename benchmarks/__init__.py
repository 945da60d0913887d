"""`wanrt bench`: latency per component and end to end, per backend and precision, against the FLOP floor."""
