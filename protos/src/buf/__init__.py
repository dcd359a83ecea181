"""Generated code for buf, vendored from protovalidate (do not edit)."""
