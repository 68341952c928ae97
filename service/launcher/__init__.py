"""Launchers: where job drivers run. See ``base.Launcher``."""

from service.launcher.base import (LaunchError, Launcher, LaunchStatus, submission_id)
from service.launcher.ray_jobs import RayJobsLauncher

__all__ = ["LaunchError", "LaunchStatus", "Launcher", "RayJobsLauncher", "submission_id",
           "connect"]


def connect(settings):  # -> tuple[Launcher, LocalRayHead | None]
    """The launcher for these settings: join RAY_ADDRESS, or start and own a local head."""
    from service.launcher.local_head import LocalRayHead

    head = None
    if settings.ray_address:
        address = settings.ray_address
        token = settings.ray_auth_token
        if token is None and settings.ray_auth_token_path:
            token = settings.ray_auth_token_path.read_text().strip()
    else:
        head = LocalRayHead(settings.data_path, num_cpus=settings.ray_num_cpus,
                            num_gpus=settings.ray_num_gpus, nice=settings.ray_nice)
        head.start()
        address, token = head.dashboard_url, head.token
    launcher = RayJobsLauncher(address, token=token, driver_python=settings.driver_python,
                               driver_env=settings.driver_env())
    return launcher, head
