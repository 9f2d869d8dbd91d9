"""Pull mode: query a declared source, retrieve a study or series, process it as if pushed.

Also the count check: a series whose sender can be queried completes as soon as
the node holds as many instances as the sender reports.
"""
