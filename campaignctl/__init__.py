"""campaignctl: configuration and firmware campaigns for fleets of IoT devices."""

__version__ = "0.1.0"
