"""``medhub serve``: a REST API with persistent jobs, and web pages, in one FastAPI app.

Modules: :mod:`~medhub.serve.settings` (configuration and safety checks), :mod:`~medhub.serve.store`
(SQLite job store), :mod:`~medhub.serve.uploads` (upload handling, zip safety),
:mod:`~medhub.serve.jobs` (submit, worker pool, cancel), :mod:`~medhub.serve.api` (REST routes),
:mod:`~medhub.serve.app` (:func:`~medhub.serve.app.create_app`), and the web pages in
:mod:`medhub.serve.web` with ``static/``.

Other routers reach the service through ``request.app.state``: ``settings``
(:class:`~medhub.serve.settings.ServeSettings`; ``settings.output_dir(job_id)`` is the job's
medhub OUT tree), ``store`` (:class:`~medhub.serve.store.JobStore`) and ``jobs``
(:class:`~medhub.serve.jobs.JobService`: ``jobs.get(id)`` raises a 404 ``ApiError``).
Everything under ``/api`` is behind the token check of the app's middleware.
"""
