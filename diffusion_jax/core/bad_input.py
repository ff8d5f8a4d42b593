"""The one error type for input the program cannot use: a file, a record or line in it, a
directory, a dataset or a config key that the user (or a foreign tool) gave it.

    str(BadInputError(source, reason, where)) == "<source>, <where>: <reason>"
                                                 (without ", <where>" when it is empty)

`source` names the input (a path or URL, a dataset's name and directory, `config.data.path`),
`where` the place in it (`line 12`, `record 3 at byte 4096`, `key 'data.size'`) and `reason` what
is wrong and, where it helps, what to do. Every reader of foreign data raises it (or a subclass
that adds a `kind`), so `diffusion_jax.main` prints it as one line and exits with status 1
instead of a traceback (`--debug` shows the traceback).
"""


class BadInputError(ValueError):
    """Input that cannot be used; the message names the input, the place in it and the reason
    (module docstring)."""

    def __init__(self, source: object, reason: str, where: str = ""):
        self.source = str(source)
        self.where = where
        self.reason = reason
        super().__init__(f"{self.source}{', ' + where if where else ''}: {reason}")

    def __reduce__(self):
        # Rebuilt without calling __init__, whose arguments subclasses change, so that the error
        # crosses process boundaries (grain's worker processes pickle what they raise).
        return _rebuild, (type(self), self.args, self.__dict__)


def _rebuild(cls: type[BadInputError], args: tuple, state: dict) -> BadInputError:
    error = cls.__new__(cls, *args)
    error.args = args
    error.__dict__.update(state)
    return error
