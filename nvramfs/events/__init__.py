"""The event log: schema (docs/EVENTS.md), the writer mm and fuse use, the reader the tools use."""
