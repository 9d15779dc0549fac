"""meshlocal: AWS Copilot's ECS Service Connect and Service Discovery, on a laptop."""

__version__ = "0.1.0"
