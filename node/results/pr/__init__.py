"""Presentation states: GSPS outlines of segments and graphics of findings."""
