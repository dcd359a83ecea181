"""Root test configuration: shared fixture plugins for every suite."""

# The suite runs gRPC on the I/O the services ship with, set before anything imports grpc.
import prognos.core.grpc_io  # noqa: F401

pytest_plugins = ["prognos.core.testing.fixtures"]
