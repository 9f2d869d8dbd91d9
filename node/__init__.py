"""ainode: a clinical AI node that sits beside a PACS."""

__version__ = "0.1.0"
