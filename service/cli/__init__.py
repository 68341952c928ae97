"""The ``regtune`` command: serve the API, run the embedded stack, manage users, and
drive the REST API (submit, jobs, status, best, trials, cancel, logs)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from service.cli.client import ApiFailure, Client, ProgressPrinter

app = typer.Typer(help="regtune: hyperparameter search for regularization.",
                  no_args_is_help=True, add_completion=False)
users_app = typer.Typer(help="Users and their bearer tokens (run on the service host).",
                        no_args_is_help=True)
app.add_typer(users_app, name="users")


def _settings(data_dir: Optional[Path] = None, **overrides: Any):
    from service.settings import Settings

    if data_dir is not None:
        os.environ["REGTUNE_DATA_DIR"] = str(data_dir)
        overrides["data_dir"] = data_dir
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def _print(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


def _client_call(fn):
    try:
        return fn()
    except ApiFailure as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2)


@app.command()
def serve(host: str = typer.Option(None, help="listen address (REGTUNE_HOST)"),
          port: int = typer.Option(None, help="listen port (REGTUNE_PORT)"),
          data_dir: Optional[Path] = typer.Option(None, help="data directory (REGTUNE_DATA_DIR)")
          ) -> None:
    """Serve the API (starts and owns a local Ray head unless RAY_ADDRESS is set)."""
    import uvicorn

    from service.app import create_app

    settings = _settings(data_dir, host=host, port=port)
    try:
        settings.check()
    except ValueError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info")


@app.command()
def up(spec: Path = typer.Argument(Path("search_spaces/demo.yaml"), exists=True, dir_okay=False),
       host: str = "127.0.0.1", port: int = 8000, mlflow_port: int = 5000,
       data_dir: Optional[Path] = typer.Option(None, help="data directory (REGTUNE_DATA_DIR)"),
       exit_when_done: bool = typer.Option(False, help="stop after printing the result")) -> None:
    """The embedded stack: Ray, the API, the MLflow UI; submit SPEC, follow it, keep serving."""
    from service.cli.embedded import run_embedded

    settings = _settings(data_dir, host=host, port=port)
    raise typer.Exit(run_embedded(settings, spec, mlflow_port, exit_when_done))


@app.command()
def submit(spec: Path = typer.Argument(..., exists=True, dir_okay=False),
           wait: bool = typer.Option(False, "--wait", help="follow progress until the job ends"),
           idempotency_key: Optional[str] = None) -> None:
    """Submit a spec file (YAML or JSON)."""
    client = Client()
    job = _client_call(lambda: client.submit(spec, idempotency_key))
    typer.echo(f"job {job['id']} {job['status']}  ({client.url}/v1/jobs/{job['id']})")
    if wait:
        printer = ProgressPrinter()
        job = _client_call(lambda: client.wait(job["id"], printer))
        printer.close()
        typer.echo(f"job {job['id']} {job['status']}")
        if job["status"] == "succeeded":
            _print(_client_call(lambda: client.best(job["id"])))
        elif job.get("error"):
            typer.echo(job["error"], err=True)
        raise typer.Exit(0 if job["status"] == "succeeded" else 1)


@app.command()
def jobs(status: Optional[str] = None) -> None:
    """List jobs, newest first."""
    for job in _client_call(lambda: Client().jobs(status)):
        t = job["trials"]
        typer.echo(f"{job['id']}  {job['status']:<9}  {job['owner']:<12}  {job['name']:<30}  "
                   f"{t['completed'] + t['stopped']}/{t['total']} trials")


@app.command()
def status(job_id: str) -> None:
    """One job: status, trial counts, best so far, MLflow ids."""
    _print(_client_call(lambda: Client().job(job_id)))


@app.command()
def best(job_id: str) -> None:
    """The best configuration of a job."""
    _print(_client_call(lambda: Client().best(job_id)))


@app.command()
def trials(job_id: str) -> None:
    """A job's trials."""
    _print(_client_call(lambda: Client().trials(job_id)))


@app.command()
def cancel(job_id: str) -> None:
    """Cancel a job (its owner or an admin)."""
    job = _client_call(lambda: Client().cancel(job_id))
    typer.echo(f"job {job['id']} {job['status']}")


@app.command()
def extend(job_id: str, num_trials: int) -> None:
    """Run NUM_TRIALS more trials of a succeeded job (finished trials are not re-run)."""
    job = _client_call(lambda: Client().extend(job_id, num_trials))
    typer.echo(f"job {job['id']} {job['status']}: {job['trials']['total']} trials planned")


@app.command()
def logs(job_id: str) -> None:
    """The driver's log."""
    typer.echo(_client_call(lambda: Client().logs(job_id)))


def _store(data_dir: Optional[Path]):
    from service.store import open_store

    return open_store(_settings(data_dir).database)


@users_app.command("add")
def users_add(name: str, admin: bool = typer.Option(False, "--admin"),
              data_dir: Optional[Path] = None) -> None:
    """Create a user; its bearer token is printed as the last line (shown once)."""
    from service.store.base import Conflict

    store = _store(data_dir)
    try:
        user, token = store.create_user(name, admin=admin)
    except Conflict as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2)
    typer.echo(f"created user {user.name}{' (admin)' if user.admin else ''}; token:")
    typer.echo(token)


@users_app.command("list")
def users_list(data_dir: Optional[Path] = None) -> None:
    for user in _store(data_dir).list_users():
        flags = ", ".join(f for f, on in (("admin", user.admin), ("revoked", user.revoked)) if on)
        typer.echo(f"{user.name}{'  (' + flags + ')' if flags else ''}")


@users_app.command("revoke")
def users_revoke(name: str, data_dir: Optional[Path] = None) -> None:
    """Revoke every token of a user."""
    if not _store(data_dir).revoke_user(name):
        typer.echo(f"no user {name}", err=True)
        raise typer.Exit(2)
    typer.echo(f"revoked {name}")


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
