"""What people look at: pictures (:mod:`~fcnkit.reporting.pictures`), the self-contained HTML report
(:mod:`~fcnkit.reporting.html`), the report of a training run (:mod:`~fcnkit.reporting.run`) and the layer table of
``fcnkit inspect`` (:mod:`~fcnkit.reporting.inspect`).

Nothing is imported here, so that ``import fcnkit.reporting.html`` does not pull in matplotlib.
"""
