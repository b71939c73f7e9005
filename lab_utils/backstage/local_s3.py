"""A local S3-compatible server (moto, in a thread) on 127.0.0.1, so the S3 steps of the lab run without AWS."""

# The lab only sees AWS_ENDPOINT_URL_S3 and placeholder credentials. `python -m lab_utils.backstage.local_s3` runs one.

from __future__ import annotations

import logging
import os
import time

HOST = "127.0.0.1"  # fixed on purpose: this server must never listen on or talk to anything else


class LocalS3:
    """moto's S3 server in a thread of this process, on a free port of 127.0.0.1 (its data lives in memory)."""

    def start(self) -> LocalS3:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # not one line per request into the notebook
        self._server = ThreadedMotoServer(ip_address=HOST, port=0, verbose=False)  # port 0: the OS picks a free one
        self._server.start()
        self.endpoint_url = f"http://{HOST}:{self._server.get_host_and_port()[1]}"
        return self

    def stop(self, *exc) -> None:
        self._server.stop()

    __enter__, __exit__ = start, stop

    def env(self) -> dict[str, str]:
        """What a standard boto3 client needs to use this server (moto accepts any credentials: placeholders)."""
        env = {"AWS_ENDPOINT_URL_S3": self.endpoint_url, "AWS_DEFAULT_REGION": "us-east-1"}
        return env | dict.fromkeys(("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"), "testing")


_LOCAL_S3 = None  # the offline profile's local S3 server, one per process


def local_s3_for(settings) -> LocalS3 | None:
    """Offline profile: this process's local S3 server (started on first use), unless AWS_ENDPOINT_URL_S3 names one."""
    global _LOCAL_S3
    if settings.offline and _LOCAL_S3 is None and not os.environ.get("AWS_ENDPOINT_URL_S3"):
        _LOCAL_S3 = server = LocalS3().start()
        # boto3 is pointed at it: the endpoint is ours; credentials and region only fill gaps
        os.environ |= {k: v for k, v in server.env().items() if k == "AWS_ENDPOINT_URL_S3" or not os.environ.get(k)}
        for var in ("NO_PROXY", "no_proxy"):  # a proxy (HTTP_PROXY, ...) must not see the requests to 127.0.0.1
            os.environ[var] = ",".join(filter(None, [os.environ.get(var), HOST, "localhost"]))
        print(f"Local S3 server listening on {server.endpoint_url} (AWS_ENDPOINT_URL_S3 is set)")
    return _LOCAL_S3 if settings.offline else None


def main() -> None:
    """A local S3 server that stays up until Ctrl-C, for commands run in other terminals."""
    with LocalS3() as server:
        print("Local S3 server on 127.0.0.1 (Ctrl-C stops it); in the other terminals:")
        print("\n".join(f"  export {name}={value}" for name, value in server.env().items()), flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print("stopped")


if __name__ == "__main__":
    main()
