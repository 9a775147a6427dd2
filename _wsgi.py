"""Entry point of the Label Studio ML backend (Minority-class mining).

Development server:  python _wsgi.py --port 9090 [--host 0.0.0.0: needs BASIC_AUTH_USER/BASIC_AUTH_PASS]
Production:          gunicorn --bind 0.0.0.0:9090 --threads 8 --timeout 0 _wsgi:app
Settings come from the environment; `python _wsgi.py --help` lists them all.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from backend.settings import Settings, settings_help_text


def configure_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="[%(asctime)s] [%(levelname)s] [%(name)s] %(message)s", stream=sys.stderr)


def build_app(settings: Settings | None = None):
    from backend.app import create_app

    settings = settings or Settings.from_env()
    configure_logging(settings.log_level)
    return create_app(settings)


def check_bind_address(host: str, settings: Settings) -> None:
    """Refuse to serve a non-loopback address without authentication (ValueError saying what to set)."""
    from backend.app import is_loopback_host

    if settings.basic_auth_user or settings.allow_unauthenticated or is_loopback_host(host):
        return
    raise ValueError(f"refusing to serve on {host} without authentication: anyone who reaches it could make the "
                     "backend act as Label Studio does. Set BASIC_AUTH_USER and BASIC_AUTH_PASS (and enter them "
                     "where the model is connected in Label Studio), serve on 127.0.0.1, or set "
                     "MCM_ALLOW_UNAUTHENTICATED=true if only trusted clients reach this address (docs/security.md)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Label Studio ML backend: mines minority-class images (tail-first scores).",
        epilog=settings_help_text(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"), help="bind address")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "9090")), help="port")
    parser.add_argument("--log-level", default=None, help="overrides LOG_LEVEL")
    args = parser.parse_args(argv)
    overrides = {"log_level": args.log_level.upper()} if args.log_level else {}
    try:
        settings = Settings.from_env(**overrides)
        check_bind_address(args.host, settings)
        application = build_app(settings)
    except Exception as exc:
        configure_logging("INFO")
        logging.getLogger("mcm").error("backend cannot start: %s", exc)
        return 2
    logging.getLogger("mcm").info("serving on http://%s:%d (backbone %s, MODEL_DIR %s)", args.host, args.port,
                                  settings.backbone, settings.model_dir)
    application.run(host=args.host, port=args.port, debug=False, threaded=True, use_reloader=False)
    return 0


_app = None


def __getattr__(name: str):
    """`_wsgi.app` (gunicorn's `_wsgi:app`) is built on first access, so importing this module is cheap."""
    global _app
    if name == "app":
        if _app is None:
            _app = build_app()
        return _app
    raise AttributeError(name)


if __name__ == "__main__":
    sys.exit(main())
