"""What ``ssd detect`` reads: source arguments -> image files and videos, and where their rendered
copies go. Video frames are read by :mod:`ssdcli.videos`.

A source argument is an image file, a folder (searched recursively for image extensions), a
glob pattern (expanded here, so it works when the shell did not expand it: quoted, or on
Windows) or a video file. Each image keeps a path relative to its source (``relative``), which
is where its rendered copy goes under ``--output`` (:func:`plan_outputs`), so a folder's
sub-folder structure survives.
"""

from __future__ import annotations

import errno
import fnmatch
import glob
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path


from ssdcli.errors import UserError

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm", ".pbm"}
)
"""Extensions collected from folders and globs (lower case); Pillow reads all of them."""

VIDEO_EXTENSIONS: frozenset[str] = frozenset(
    {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp"}
)
"""Extensions read as videos, frame by frame, with OpenCV (FFmpeg)."""

RENDER_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
"""Image types ``cv2.imwrite`` encodes; a rendered copy of any other image type is written as ``.png``."""

_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class ImageSource:
    """One image file to run on.

    Attributes:
        path: the file, as found (relative to the working directory when the source was).
        relative: where its rendered copy goes under ``--output``: the file name for a file
            source, the path inside the folder for a folder source, the path below the fixed
            part of the pattern for a glob.
    """

    path: Path
    relative: Path


@dataclass(frozen=True)
class VideoSource:
    """One video file (``path``) or camera (``camera`` index, ``path`` None)."""

    path: Path | None = None
    camera: int | None = None

    @property
    def name(self) -> str:
        """What messages and the json ``file`` field call it: the path, or ``webcam:N``."""
        return str(self.path) if self.path is not None else f"webcam:{self.camera}"

    @property
    def stem(self) -> str:
        """File stem, or ``webcam<N>``: the base of output file names and COCO image ids."""
        return self.path.stem if self.path is not None else f"webcam{self.camera}"


@dataclass
class SourcePlan:
    """Every source argument, expanded.

    Attributes:
        images: image files in argument order; within a folder or glob, sorted by path.
        videos: video files in argument order.
        missing: one message per argument that named nothing (missing path, empty glob).
        unsupported: one message per file named explicitly whose type is neither image nor video
            (left out).
        skipped: one message per symlink loop, broken symlink or unreadable folder met while
            searching folders and ``**`` patterns (left out; the search goes on).
    """

    images: list[ImageSource] = field(default_factory=list)
    videos: list[VideoSource] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS


def _is_media(path: Path) -> bool:
    return is_image(path) or is_video(path)


def _glob_root(pattern: str) -> Path:
    """The folder part of ``pattern`` before its first wildcard (``data/*/img*.jpg`` -> ``data``)."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts[:-1]:
        if _GLOB_CHARS & set(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def walk_files(folder: Path, wanted: Callable[[Path], bool], skipped: list[str]) -> Iterator[Path]:
    """Files below ``folder`` (prefix kept) for which ``wanted(path)`` holds, following symlinks:
    a folder's files in name order, then its sub-folders, depth first.

    Each folder is searched once: a symlink back to a folder on the way down (a loop, which
    ``os.walk(followlinks=True)`` follows to the kernel's 40-link limit: 2**40 paths for two such
    links) is reported in ``skipped``, a second link to a folder already searched is ignored, and
    looping or broken links among the wanted files are reported and left out."""
    searched: set[tuple[int, int]] = set()
    stack: list[tuple[Path, tuple[tuple[tuple[int, int], Path], ...]]] = [(folder, ())]
    while stack:
        directory, chain = stack.pop()
        try:
            info = os.stat(directory)
            key = (info.st_dev, info.st_ino)
            ancestor = next((path for seen, path in chain if seen == key), None)
            if ancestor is not None:
                skipped.append(f"{directory}: a symlink loop (it leads back to {ancestor}); not searched")
                continue
            if key in searched:
                continue
            searched.add(key)
            entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
        except OSError as exc:
            skipped.append(f"{directory}: cannot be searched ({exc.strerror or exc}); skipped")
            continue
        folders = []
        for entry in entries:
            path = Path(entry.path)
            try:
                if entry.is_dir():  # follows symlinks
                    folders.append(path)
                    continue
            except OSError:  # a link loop: stat fails with ELOOP
                pass
            if not wanted(path):
                continue
            problem = _link_problem(path) if entry.is_symlink() else None
            if problem is not None:
                skipped.append(f"{path}: {problem}; skipped")
                continue
            yield path
        stack.extend((sub, chain + ((key, directory),)) for sub in reversed(folders))


def _link_problem(path: Path) -> str | None:
    """``None`` when the symlink ``path`` leads to an existing file, else what is wrong with it."""
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a symlink loop"
        return f"a broken symlink ({exc.strerror or exc})"
    return None


def _folder_images(folder: Path, skipped: list[str]) -> list[ImageSource]:
    """Image files anywhere below ``folder``, sorted; other files are skipped silently."""
    return [ImageSource(path, path.relative_to(folder)) for path in walk_files(folder, is_image, skipped)]


def _match_parts(parts: Sequence[str], pattern: Sequence[str]) -> bool:
    """Whether path components ``parts`` match glob components ``pattern`` as :func:`glob.glob`
    would: ``**`` spans any number of components, ``*`` ``?`` ``[...]`` stay inside one, and a
    wildcard never matches a hidden (dot) name."""
    if not pattern:
        return not parts
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        return any(_match_parts(parts[i:], rest) for i in range(len(parts) + 1)
                   if not any(part.startswith(".") for part in parts[:i]))
    if not parts or (parts[0].startswith(".") and not head.startswith(".")):
        return False
    return fnmatch.fnmatch(parts[0], head) and _match_parts(parts[1:], rest)


def _glob_files(pattern: str, skipped: list[str]) -> list[Path]:
    """The image and video files ``pattern`` matches, sorted. A ``**`` pattern is matched on a
    :func:`walk_files` search of its fixed part, so symlink loops are reported, not followed."""
    if "**" not in pattern:
        return [m for m in sorted(Path(m) for m in glob.glob(pattern)) if m.is_file() and _is_media(m)]
    root = _glob_root(pattern)
    below = Path(pattern).parts[len(root.parts) :]
    if not root.is_dir():
        return []

    def wanted(path: Path) -> bool:
        return _is_media(path) and _match_parts(path.relative_to(root).parts, below)

    return sorted(walk_files(root, wanted, skipped))


def expand_sources(sources: Sequence[str]) -> SourcePlan:
    """Expand source arguments into image files and videos (no file is opened).

    Rules: an existing file is an image or a video by its extension (anything else goes to
    ``unsupported``); an existing folder contributes every image file below it; an argument
    that does not exist but holds ``*``, ``?`` or ``[`` is a glob (``**`` recurses) whose image
    and video matches are taken; everything else goes to ``missing``. An image reached twice is
    kept once; symlink loops are reported in ``skipped`` (:func:`walk_files`), never followed.
    """
    plan = SourcePlan()
    seen: set[Path] = set()

    def add_image(item: ImageSource) -> None:
        key = Path(os.path.realpath(item.path))  # never raises on a link loop, unlike Path.resolve
        if key not in seen:
            seen.add(key)
            plan.images.append(item)

    for source in sources:
        path = Path(source)
        if path.is_dir():
            items = _folder_images(path, plan.skipped)
            if not items:
                plan.missing.append(f"{source}: folder holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
            for item in items:
                add_image(item)
        elif path.is_file():
            if is_image(path):
                add_image(ImageSource(path, Path(path.name)))
            elif is_video(path):
                plan.videos.append(VideoSource(path=path))
            else:
                plan.unsupported.append(
                    f"{source}: not an image or video file by its extension ({path.suffix or 'none'})"
                )
        elif _GLOB_CHARS & set(source):
            root = _glob_root(source)
            matches = _glob_files(source, plan.skipped)
            if not matches:
                plan.missing.append(f"{source}: the pattern matches no image or video files")
            for match in matches:
                if is_video(match):
                    plan.videos.append(VideoSource(path=match))
                else:
                    add_image(ImageSource(match, match.relative_to(root)))
        elif path.is_symlink():
            plan.missing.append(f"{source}: {_link_problem(path) or 'a symlink to neither a file nor a folder'}")
        else:
            plan.missing.append(f"{source}: no such file or folder")
    return plan


def plan_outputs(
    images: Sequence[ImageSource], videos: Sequence[VideoSource], output: Path
) -> tuple[list[Path], list[Path], list[str]]:
    """Where each image's and video's rendered copy goes under ``output``: an image at its
    ``relative`` path (``.png`` when OpenCV cannot write its type), a video at ``<stem>.mp4``.

    Returns:
        ``(image targets, video targets, warnings)``; a name already taken by an earlier source
        gets ``-2``, ``-3``, ... appended (with a warning).

    Raises:
        UserError: a target would overwrite an input (e.g. ``--output`` is an input folder).
    """
    inputs = {item.path.resolve() for item in images} | {v.path.resolve() for v in videos if v.path}
    taken: set[Path] = set()
    warnings: list[str] = []

    def unique(relative: Path, source: Path) -> Path:
        target = output / relative
        n = 2
        while target in taken:
            target = output / relative.with_name(f"{relative.stem}-{n}{relative.suffix}")
            n += 1
        if target != output / relative:
            warnings.append(f"{source}: {output / relative} is taken by another source; writing {target}")
        if target.resolve() in inputs:
            raise UserError(
                f"--output {output}: would overwrite the input {target}; choose a folder that is not an input"
            )
        taken.add(target)
        return target

    image_targets = []
    for item in images:
        relative = item.relative if item.relative.suffix.lower() in RENDER_EXTENSIONS else item.relative.with_suffix(".png")
        image_targets.append(unique(relative, item.path))
    video_targets = [unique(Path(f"{video.stem}.mp4"), Path(video.name)) for video in videos]
    return image_targets, video_targets, warnings
