"""`--reward-url` and its settings, shared by every stage that takes scorers (`aif score`, `aif eval`, `aif loop`,
`aif rl`): a dataclass of `option()` fields the stage configs inherit, and the rule that turns the stage's scorer specs
into served ones. `--reward-url URL` is the same as spelling each scorer `NAME:URL` (scorers/vlm_served.py); the
API key is read from the environment variable `--reward-api-key-env` names, so no key is ever written down.

Light on purpose (no torch): the stage configs import it.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from typing import Iterable, Optional

from aifeedback.config import option
from aifeedback.errors import AifError
from aifeedback.scoring.scorers.vlm_judges import JUDGES

# the scorers a server can answer: the VLM judges (vlm_judges.JUDGES), pointwise and pairwise
SERVABLE = tuple(JUDGES)


@dataclass
class RewardServerOptions:
    """The options of a served reward model. A stage config inherits them (its own fields follow)."""

    reward_url: Optional[str] = option(None, "an OpenAI-compatible server (vLLM, SGLang; http://HOST:PORT/v1) that "
                                             "answers the scorers, which must then all be VLM judges (" +
                                       ", ".join(SERVABLE) + "); the same as spelling each NAME:URL")
    reward_api_key_env: Optional[str] = option(None, "name of the environment variable holding the --reward-url "
                                                     "server's API key (sent as a Bearer token; the key itself is "
                                                     "never written to config.yaml or the manifest)", identity=False)
    reward_concurrency: Optional[int] = option(None, "requests in flight to --reward-url (default 8)", min=1,
                                               identity=False)
    reward_timeout: Optional[float] = option(None, "seconds per request to --reward-url (default 60)", min=0.001,
                                             identity=False)

    def reward_server(self) -> str | None:
        """--reward-url with the settings in its query (as scorers/vlm_served.Server.parse reads them), or None."""
        if self.reward_url is None:
            return None
        parts = urllib.parse.urlsplit(self.reward_url.strip())
        query = urllib.parse.parse_qsl(parts.query)
        for key, value in (("api_key_env", self.reward_api_key_env), ("concurrency", self.reward_concurrency),
                           ("timeout", self.reward_timeout)):
            if value is not None:
                query = [(k, v) for k, v in query if k != key] + [(key, f"{value:g}" if key == "timeout" else
                                                                   str(value))]
        return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))

    def reward_problems(self, specs: Iterable[str], option_name: str) -> list[str]:
        """What is wrong with --reward-url and the stage's scorers together (empty: nothing); validate() adds them."""
        from aifeedback.scoring.scorers import parse_spec

        if self.reward_url is None:
            unused = [f"--{k.replace('_', '-')}" for k in ("reward_api_key_env", "reward_concurrency",
                                                          "reward_timeout") if getattr(self, k) is not None]
            return [f"{', '.join(unused)} set without --reward-url: give the server's --reward-url, or drop "
                    f"{'them' if len(unused) > 1 else 'it'}"] if unused else []
        if not self.reward_url.strip().lower().startswith(("http://", "https://")):
            return [f"reward_url {self.reward_url!r} is not an http(s) URL: give the server's API base, e.g. "
                    "http://127.0.0.1:8000/v1"]
        problems = []
        for spec in specs:
            try:
                name, model = parse_spec(spec)
            except AifError as e:
                problems.append(str(e))
                continue
            if name not in SERVABLE:
                problems.append(f"{option_name} {spec}: this scorer cannot be served, and --reward-url serves every "
                                f"scorer of {option_name}. Fix: use a VLM judge ({', '.join(SERVABLE)}), or drop "
                                f"--reward-url and spell the served judge NAME:URL next to local scorers")
            elif model is not None:
                problems.append(f"{option_name} {spec} names its own model ({model}) and --reward-url a server. "
                                f"Fix: write {name} alone to use the server, or drop --reward-url")
        return problems

    def served(self, specs: Iterable[str], option_name: str, local: Iterable[str] = ()) -> list[str]:
        """The specs to load: with --reward-url each becomes NAME:URL (with its settings); specs in `local` (scorers
        the stage adds itself, e.g. a benchmark's) stay as they are. Raises what reward_problems finds."""
        specs, local = list(specs), set(local)
        problems = self.reward_problems([s for s in specs if s not in local], option_name)
        if problems:
            raise AifError("; ".join(problems))
        url = self.reward_server()
        if url is None:
            return specs
        from aifeedback.scoring.scorers import parse_spec

        return [s if s in local else f"{parse_spec(s)[0]}:{url}" for s in specs]
