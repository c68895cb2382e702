"""SeaweedFS as the team's S3 object store: `weed server` with its master, volume and filer
bound to 127.0.0.1, the S3 gateway behind access keys, the volume and filer servers behind JWT
signing keys, its gRPC behind mutual TLS with the stack's own certificates (security_toml), its
logs and HTTP sockets in the stack's folder, no Iceberg or Lance servers, and no usage reports
to its vendor."""

import os
import stat
from pathlib import Path

# SeaweedFS would put each gRPC port at its HTTP port + 10000 unless told
PORTS = ("s3", "master", "volume", "filer")
GRPC_PORTS = tuple(f"{name}_grpc" for name in PORTS)


def command(binary: Path, folder: Path, ports: dict[str, int], s3_config: Path) -> list[str]:
    """`weed server` for the stack in `folder` (the data in folder/seaweedfs)."""
    telemetry = "true" if os.environ.get("MNIST_TELEMETRY") == "1" else "false"
    return [
        str(binary), "-logtostderr",  # logs to its output (the stack's log), no files in /tmp
        "server", f"-dir={folder / 'seaweedfs'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-master.port={ports['master']}", f"-volume.port={ports['volume']}",
        f"-filer.port={ports['filer']}", "-filer", "-s3", f"-s3.port={ports['s3']}",
        f"-s3.config={s3_config}", "-volume.max=0", "-master.volumeSizeLimitMB=64",
        *(f"-{name}.port.grpc={ports[name + '_grpc']}" for name in PORTS),
        "-s3.port.iceberg=0", "-s3.port.lance=0",  # servers the stack has no use for
        "-volume.preStopSeconds=0",  # one machine: no cluster to hand its volumes over to
        "-master.electionTimeout=2s",  # one master: its restart need not wait 10 s for peers
        f"-master.telemetry={telemetry}",
        f"-filer.localSocket={folder / 'weed-filer.sock'}",
        f"-s3.localSocket={folder / 'weed-s3.sock'}",
    ]  # fmt: skip


def environment(jwt_key: str, filer_jwt_key: str) -> dict[str, str]:
    """What `weed` reads from its environment rather than a command line (its security.toml
    keys, WEED_-prefixed): the signing keys without which its volume server refuses writes and
    its filer refuses reads and writes, and no directory listings from the filer. Reading a
    chunk from the volume server still needs no key (SeaweedFS supports none with a filer)."""
    return {
        "WEED_JWT_SIGNING_KEY": jwt_key,
        "WEED_JWT_FILER_SIGNING_KEY": filer_jwt_key,
        "WEED_JWT_FILER_SIGNING_READ_KEY": filer_jwt_key,
        "WEED_FILER_EXPOSE_DIRECTORY_METADATA_ENABLED": "false",
    }


def grpc_socket(name: str, port: int) -> Path:
    """Where `weed server` puts the gRPC Unix socket of its server `name` listening on gRPC
    port `port`: /tmp, with no flag to move it (its HTTP ones go to the stack's folder). The
    name is the stack's own only through the port in it, so team-up re-chooses a port whose
    name someone else took (socket_taken). It is its owner's alone (umask 077); a server killed
    before it closed it leaves it behind, so team-down removes it."""
    return Path(f"/tmp/seaweedfs-{name}-grpc-{port}.sock")


def grpc_sockets(ports: dict[str, int]) -> list[Path]:
    """The gRPC Unix sockets of the stack with these ports (grpc_socket)."""
    return [grpc_socket(name, ports[name + "_grpc"]) for name in PORTS]


def socket_taken(path: Path) -> bool:
    """Whether something other than a socket of this user's is at `path`. weed removes what is
    there before it listens, but not another user's file in the sticky /tmp, nor a folder; it
    then only logs the failure, and its own servers, which dial each other through these
    sockets, never find one another: the stack would not come up."""
    try:
        found = path.lstat()
    except FileNotFoundError:
        return False
    return not (stat.S_ISSOCK(found.st_mode) and found.st_uid == os.getuid())


# The servers `weed server` runs with gRPC, and its outgoing calls (`client`): each presents the
# stack's certificate and asks its peers for one signed by the stack's CA (tooling/certificates).
TLS_PARTS = ("master", "volume", "filer", "s3", "client")


def security_toml(ca: Path, cert: Path, key: Path) -> str:
    """SeaweedFS's security.toml (`weed scaffold -config=security`) closing its gRPC ports to
    callers without a certificate of the stack's CA: mutual TLS, the only authentication its
    gRPC has. `weed` reads it from its working folder (the stack's) before $HOME/.seaweedfs/
    and /etc/seaweedfs/. It names files, no secret; the JWT keys stay in the environment."""
    lines = ["# written by `make team-up` (tooling/seaweedfs.py); remade at each start", ""]
    lines += ["[grpc]", f'ca = "{ca}"', ""]
    for part in TLS_PARTS:
        lines += [f"[grpc.{part}]", f'cert = "{cert}"', f'key = "{key}"', ""]
    return "\n".join(lines)


def identities(access_key: str, secret_key: str) -> dict:
    """The S3 gateway's one identity (its -s3.config): the team's keys, all actions."""
    keys = {"accessKey": access_key, "secretKey": secret_key}
    actions = ["Admin", "Read", "Write", "List", "Tagging"]
    return {"identities": [{"name": "team", "credentials": [keys], "actions": actions}]}
