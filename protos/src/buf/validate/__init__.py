"""Generated code for buf.validate, vendored from protovalidate (do not edit)."""
