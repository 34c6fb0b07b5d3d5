"""One or two examples per command, shown at the end of its ``--help`` and in its man page.

Kept apart from the modules that register the commands (so one table says how the CLI is meant
to be used) and read only when help is printed (``CliParser.format_help``): no start-up cost.
A nested command without its own entry (``image tag``) shows its parent's examples.
"""

from __future__ import annotations

EXAMPLES: dict[str, str] = {
    "check": """\
  pymigrate check                  # can this host run, checkpoint and migrate containers?
  pymigrate check --json | jq .criu""",
    "run": """\
  pymigrate run -d --name web -p 8080:80 -m 256m busybox httpd -f -p 80
  pymigrate run --rm -it busybox sh
  pymigrate run --rm --json busybox sh -c 'echo hi' | tail -n1   # --json: the output first, the result {"exit_code", "name"} on the last line""",
    "create": """\
  pymigrate create --name web -p 8080:80 busybox httpd -f -p 80
  pymigrate start web""",
    "exec": """\
  pymigrate exec web cat /etc/hostname
  pymigrate exec -it web sh""",
    "ps": """\
  pymigrate ps -a --filter status=exited --filter label=tier=web
  pymigrate ps --format '{{.Names}}\\t{{.Status}}'
  pymigrate ps -q --filter status=running | xargs -r pymigrate stop""",
    "inspect": """\
  pymigrate inspect web
  pymigrate inspect --format '{{.State.Status}}' web db""",
    "logs": """\
  pymigrate logs -f web
  pymigrate logs --tail 20 --since 10m -t web 2>/dev/null   # stdout only""",
    "start": """\
  pymigrate start web
  pymigrate start web db""",
    "restart": """\
  pymigrate restart web
  pymigrate restart --time 2 web""",
    "stop": """\
  pymigrate stop web
  pymigrate stop -t 0 web db""",
    "kill": """\
  pymigrate kill web
  pymigrate kill -s HUP web""",
    "rm": """\
  pymigrate rm web
  pymigrate rm -f web             # stop it first; a missing container is not an error""",
    "pause": """\
  pymigrate pause web             # freeze its cgroup""",
    "unpause": """\
  pymigrate unpause web""",
    "wait": """\
  pymigrate wait web              # prints its exit code when it stops""",
    "rename": """\
  pymigrate rename web web-old""",
    "stats": """\
  pymigrate stats                 # live, every running container
  pymigrate stats --no-stream --json web""",
    "top": """\
  pymigrate top web
  pymigrate top web -o pid,user,args""",
    "cp": """\
  pymigrate cp web:/etc/hostname ./hostname
  pymigrate cp ./site/. web:/var/www/""",
    "port": """\
  pymigrate port web
  pymigrate port web 80/tcp""",
    "attach": """\
  pymigrate attach web            # detach with ctrl-p ctrl-q""",
    "image": """\
  pymigrate image pull docker.io/library/busybox:latest
  pymigrate image ls""",
    "image import": """\
  pymigrate image import rootfs.tar mybase""",
    "image load": """\
  pymigrate image load busybox.tar
  pymigrate image load --name app:1 ./oci-layout-dir""",
    "image pull": """\
  pymigrate image pull docker.io/library/alpine:3.20
  pymigrate image pull --name app:1 localhost:5000/app:1""",
    "image push": """\
  pymigrate image push app:1 localhost:5000/app:1
  pymigrate image push --tls-verify=false app:1 localhost:5000/app:1""",
    "image login": """\
  pymigrate image login -u me --password-stdin registry.example.com < token""",
    "image ls": """\
  pymigrate image ls
  pymigrate image ls --json""",
    "image rm": """\
  pymigrate image rm busybox""",
    "image prune": """\
  pymigrate image prune""",
    "commit": """\
  pymigrate commit web web:v2
  pymigrate commit -c 'CMD ["httpd","-f"]' web web:v3""",
    "volume": """\
  pymigrate volume create data
  pymigrate run -d -v data:/data busybox sleep 1d""",
    "volume ls": """\
  pymigrate volume ls --json""",
    "checkpoint": """\
  pymigrate checkpoint web                          # stop web, keep its state
  pymigrate checkpoint --leave-running --export web.pmc web
  pymigrate checkpoint ls""",
    "restore": """\
  pymigrate restore CHECKPOINT_ID
  pymigrate restore --import web.pmc --name web2""",
    "migrate": """\
  pymigrate migrate web 10.0.0.2:7070 --tls-cert c.pem --tls-key c.key --tls-ca ca.pem
  pymigrate migrate --mode postcopy web ssh://root@host2""",
    "daemon": """\
  pymigrate daemon                                  # unix:ROOT/run/pymigrate.sock
  pymigrate daemon --listen 0.0.0.0:7070 --tls-cert d.pem --tls-key d.key --tls-ca ca.pem""",
    "events": """\
  pymigrate events --since 10m --filter type=container
  pymigrate events --filter container=web --format json""",
    "tls": """\
  pymigrate tls init                                # a CA in /etc/pymigrate/tls
  pymigrate tls issue --ip 10.0.0.2 host2""",
    "tls issue": """\
  pymigrate tls issue --ip 10.0.0.2 --dns host2.lan host2
  pymigrate tls issue --client-only scheduler""",
    "version": """\
  pymigrate version
  pymigrate --host ssh://root@host2 version --json""",
    "completion": """\
  pymigrate completion bash > /usr/share/bash-completion/completions/pymigrate
  pymigrate completion fish | source""",
}


def examples_for(path: str) -> str | None:
    """The examples of ``path`` ("ps", "image ls"), else of its parent command; None at the top."""
    words = path.split()
    while words:
        text = EXAMPLES.get(" ".join(words))
        if text is not None:
            return text
        words.pop()
    return None
