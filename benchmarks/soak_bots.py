"""The `campaign-bot run` processes of the soak benchmark: start, kill -9, restart, RSS.

A slot ("a", "b") is one process the clinic runs; each start in it is a new `Bot` (a1, a2, …),
so that peak RSS is per process. Exits not caused by a kill are restarted too, after the
same pause, as a service manager would.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

RESTART_AFTER = 2.0  # seconds from a process's death to its replacement


class SetupBroke(Exception):
    """The benchmark could not set itself up: nothing was measured."""


@dataclass
class Bot:
    """One `campaign-bot run` process (a restart is a new Bot in the same slot)."""

    name: str
    process: asyncio.subprocess.Process
    port: int
    log: Path
    peak_kb: int = 0

    def sample(self) -> None:
        """Fold VmRSS and VmHWM (the kernel's own peak) into `peak_kb`."""
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
                if line.startswith(("VmRSS:", "VmHWM:")):
                    self.peak_kb = max(self.peak_kb, int(line.split()[1]))

    @property
    def alive(self) -> bool:
        return self.process.returncode is None


@dataclass
class Fleet:
    """The two slots, their restarts and RSS samples."""

    env: dict[str, str]  # the whole environment of each process, but its PORT
    workdir: Path
    bots: list[Bot] = field(default_factory=list)
    slots: dict[str, Bot] = field(default_factory=dict)
    restarting: set[str] = field(default_factory=set)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    exits: list[str] = field(default_factory=list)

    async def start(self, slot: str) -> Bot:
        port = free_port()
        name = f"{slot}{sum(b.name[0] == slot for b in self.bots) + 1}"
        log = self.workdir / f"{name}.log"
        with log.open("wb") as out:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bot.cli", "run", "--host", "127.0.0.1",
                cwd=self.workdir, env={**self.env, "PORT": str(port)},
                stdout=out, stderr=out, start_new_session=True,  # our Ctrl-C is not theirs
            )
        bot = Bot(name, process, port, log)
        self.bots.append(bot)
        self.slots[slot] = bot
        return bot

    def kill(self, rng: random.Random) -> str:
        live = [s for s, b in sorted(self.slots.items()) if b.alive and s not in self.restarting]
        if not live:
            return "kill skipped: no live process"
        bot = self.slots[rng.choice(live)]
        bot.sample()
        with contextlib.suppress(ProcessLookupError):
            bot.process.send_signal(signal.SIGKILL)
        self.restart_later(bot.name[0])
        return f"kill -9 {bot.name} (pid {bot.process.pid})"

    def restart_later(self, slot: str) -> None:
        async def restart() -> None:
            try:
                await self.slots[slot].process.wait()
                await asyncio.sleep(RESTART_AFTER)
                bot = await self.start(slot)
                say(f"restarted as {bot.name} (pid {bot.process.pid})")
            finally:
                self.restarting.discard(slot)

        self.restarting.add(slot)
        task = asyncio.create_task(restart())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def watch(self) -> None:
        """Sample RSS; restart a process that exited without being killed (e.g. at start-up
        while the database was away), as a service manager would."""
        for slot, bot in self.slots.items():
            bot.sample()
            if not bot.alive and slot not in self.restarting:
                self.exits.append(f"{bot.name} exited by itself ({bot.process.returncode})")
                say(self.exits[-1])
                self.restart_later(slot)

    async def stop(self) -> list[str]:
        """SIGTERM every live process; what each exited with."""
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        live = [b for b in self.slots.values() if b.alive]
        for bot in live:
            bot.sample()
            with contextlib.suppress(ProcessLookupError):
                bot.process.send_signal(signal.SIGTERM)

        async def exit_code(bot: Bot) -> str:
            try:
                return f"{bot.name} exit {await asyncio.wait_for(bot.process.wait(), 60)}"
            except TimeoutError:
                return f"{bot.name} still running after 60 s"

        return list(await asyncio.gather(*(exit_code(b) for b in live)))

    async def kill_all(self) -> None:
        """SIGKILL whatever still runs, pending restarts first (the exit path: never leaks)."""
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for bot in self.bots:
            if bot.alive:
                with contextlib.suppress(ProcessLookupError):
                    bot.process.send_signal(signal.SIGKILL)
                await bot.process.wait()


@dataclass
class Clock:
    """Times in the printout: from the start during setup, then from the due moment."""

    started: float = field(default_factory=time.monotonic)
    due: float | None = None  # time.monotonic() of the campaigns' due moment, once set


CLOCK = Clock()


def say(text: str) -> None:
    """One line of the run's timeline, printed at once."""
    if CLOCK.due is not None:
        print(f"[due {time.monotonic() - CLOCK.due:+6.1f}s] {text}", flush=True)
    else:
        print(f"[setup {time.monotonic() - CLOCK.started:5.1f}s] {text}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_healthy(bot: Bot, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        while time.monotonic() < deadline:
            if not bot.alive:
                break
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.get(f"http://127.0.0.1:{bot.port}/healthz") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.2)
    tail = bot.log.read_text(errors="replace")[-3000:]
    raise SetupBroke(f"{bot.name} never answered /healthz:\n{tail}")
