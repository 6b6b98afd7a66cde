"""What a conversion did, key by key, for logs and the converter tool's report."""

from dataclasses import dataclass, field
from typing import Dict, List, Optional


@dataclass
class ConversionReport:
    """Bookkeeping of one conversion into our state-dict keys.

    Attributes:
        source_format: name of the detected family (a key of :data:`~.families.FAMILIES`).
        variant: human-readable description of the source variant (plain / refine /
            two-stage, levels, points, layers, queries, classes), filled by the converter.
        matched: keys whose name did not change.
        remapped: ``{source key: our key}`` for renamed keys (a split or a merge lists each
            source key).
        dropped: ``{source key: reason}`` for keys deliberately not carried over (aliases, ...).
        filled: ``{our key: reason}`` for keys created by the converter (``num_batches_tracked`` of
            frozen BatchNorm, shared heads that a file stored once).
        missing: keys of the target model that the converted dict lacks (None: no target).
        unexpected: converted keys the target model does not have (None: no target).
        notes: anything else worth telling (class remapping, ...).
    """

    source_format: str = ''
    variant: str = ''
    matched: List[str] = field(default_factory=list)
    remapped: Dict[str, str] = field(default_factory=dict)
    dropped: Dict[str, str] = field(default_factory=dict)
    filled: Dict[str, str] = field(default_factory=dict)
    missing: Optional[List[str]] = None  # None: not checked against a model
    unexpected: Optional[List[str]] = None
    notes: List[str] = field(default_factory=list)

    def record(self, source_key: str, target_key: Optional[str], reason: str = '') -> None:
        """Note what became of ``source_key`` (``target_key=None``: dropped for ``reason``)."""
        if target_key is None:
            self.dropped[source_key] = reason
        elif target_key == source_key:
            self.matched.append(source_key)
        else:
            self.remapped[source_key] = target_key

    def record_chain(self, first: 'ConversionReport', second: 'ConversionReport') -> None:
        """Record two renamings run one after the other (source -> middle -> ours) as one.

        ``first`` maps source keys to middle keys, ``second`` middle keys to ours; what
        ``second`` dropped is reported under the source key that led to it.
        """
        middle_to_ours = {k: k for k in second.matched}
        middle_to_ours.update(second.remapped)
        source_to_middle = {k: k for k in first.matched}
        source_to_middle.update(first.remapped)
        for source_key, middle_key in source_to_middle.items():
            if middle_key in second.dropped:
                self.dropped[source_key] = second.dropped[middle_key]
            else:
                self.record(source_key, middle_to_ours.get(middle_key, middle_key))
        self.dropped.update(first.dropped)
        self.filled.update(second.filled)
        self.filled.update(first.filled)
        self.notes.extend(first.notes + second.notes)

    def summary(self, max_keys: int = 10) -> str:
        """A multi-line text report; lists are cut to ``max_keys`` entries each."""

        def listing(title: str, items: List[str]) -> List[str]:
            lines = [f'{title}: {len(items)}']
            lines += [f'    {item}' for item in items[:max_keys]]
            if len(items) > max_keys:
                lines.append(f'    ... ({len(items) - max_keys} more)')
            return lines

        lines = [f'detected format: {self.source_format}', f'variant: {self.variant}']
        lines += listing('matched (same name)', self.matched)
        lines += listing('remapped', [f'{k} -> {v}' for k, v in self.remapped.items()])
        lines += listing('dropped', [f'{k} ({v})' for k, v in self.dropped.items()])
        lines += listing('filled', [f'{k} ({v})' for k, v in self.filled.items()])
        for title, keys in (
            ('missing in checkpoint', self.missing),
            ('unexpected for model', self.unexpected),
        ):
            lines += (
                listing(title, keys)
                if keys is not None
                else [f'{title}: not checked (no target model; see --config)']
            )
        lines += [f'note: {note}' for note in self.notes]
        return '\n'.join(lines)
