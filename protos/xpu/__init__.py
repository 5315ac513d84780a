"""The `xpu` protobuf package."""
