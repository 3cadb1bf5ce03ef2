"""Helpers of the test suite, shared with ``benchmarks/``.

* ``fake_openai``: ``FakeOpenAI``, the scriptable fake of the Responses API over real HTTP;
* ``data``: generated artists (``make_artists``, lazy ``iter_artists``) and input CSV files;
* ``database``: the user's tables (``USER_TABLES``), template and fresh databases
  (``TemplateDatabases``) and a test's handle on its database (``TestDatabase``);
* ``cli``: the CLI in the test process (``run_in_process``) or as a subprocess
  (``run_process``, ``start_process``), and ``Job`` (see the ``job`` fixture);
* ``checks``: invariants after a run (``read_jsonl``, ``assert_mirror``,
  ``assert_legacy_record``).

Nothing is imported here: the benchmarks' fake-server process imports ``fake_openai`` alone.
"""
