"""Launchers: where job drivers run. See ``base.Launcher``."""

from typing import Callable

from service.launcher.base import (LaunchError, Launcher, LaunchStatus, submission_id)
from service.launcher.ray_jobs import RayJobsLauncher

__all__ = ["LaunchError", "LaunchStatus", "Launcher", "RayJobsLauncher", "submission_id",
           "connect"]


def connect(settings, while_starting: Callable[[], None] | None = None):
    # -> tuple[Launcher, LocalRayHead | None]
    """The launcher for these settings: join RAY_ADDRESS, or start and own a local head.

    ``while_starting`` runs while a local head boots (the service makes MLflow's
    tables meanwhile: 2.1 s against the head's 3-4 s, on two cores); if it raises,
    the head is stopped and the error goes on.
    """
    from service.launcher.local_head import LocalRayHead

    head = None
    if settings.ray_address:
        if while_starting is not None:
            while_starting()
        address = settings.ray_address
        token = settings.ray_auth_token
        if token is None and settings.ray_auth_token_path:
            token = settings.ray_auth_token_path.read_text().strip()
    else:
        head = LocalRayHead(settings.data_path, num_cpus=settings.ray_num_cpus,
                            num_gpus=settings.ray_num_gpus, nice=settings.ray_nice)
        head.launch()
        try:
            if while_starting is not None:
                while_starting()
        except BaseException:
            head.stop()
            raise
        head.wait_ready()
        address, token = head.dashboard_url, head.token
    launcher = RayJobsLauncher(address, token=token, driver_python=settings.driver_python,
                               driver_env=settings.driver_env())
    return launcher, head
