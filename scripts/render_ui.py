"""Render the modules' .ui panels offscreen with PySide6, for review without Slicer.

Slicer/CTK classes are unknown to Qt's loader; visible stand-ins are registered for them
(a combo box naming the node class for qMRMLNodeComboBox, a titled group box for
ctkCollapsibleButton, a slider with a spin box for ctkSliderWidget). Every picture says it is a
layout render, not Slicer.

    QT_QPA_PLATFORM=offscreen python scripts/render_ui.py docs/screenshots
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import QFile, Qt  # noqa: E402
from PySide6.QtGui import QColor, QFont, QPainter  # noqa: E402
from PySide6.QtUiTools import QUiLoader  # noqa: E402
from PySide6.QtWidgets import (QApplication, QComboBox, QDoubleSpinBox, QGroupBox, QHBoxLayout, QSlider,  # noqa: E402
                               QVBoxLayout, QWidget)

ROOT = Path(__file__).resolve().parent.parent
PANELS = [ROOT / "DeepRegistration" / "Resources" / "UI" / "DeepRegistration.ui",
          ROOT / "DeepMetricTraining" / "Resources" / "UI" / "DeepMetricTraining.ui"]


class qMRMLWidget(QWidget):
    """Stand-in for Slicer's MRML-aware base widget of a module panel."""


class qMRMLNodeComboBox(QComboBox):
    """Shows the node class it selects, as Slicer's node selector would show a node name."""

    def setNodeTypes(self, types):
        self.clear()
        self.addItem(f"<{', '.join(types)}>")

    def getNodeTypes(self):
        return []

    from PySide6.QtCore import Property
    nodeTypes = Property("QStringList", getNodeTypes, setNodeTypes)


class ctkCollapsibleButton(QGroupBox):
    def setText(self, text):
        self.setTitle("▼ " + text)

    def getText(self):
        return self.title()

    def setCollapsed(self, collapsed):
        if collapsed:
            self.setTitle(self.title().replace("▼", "►"))
            self.setMaximumHeight(24)

    def getCollapsed(self):
        return False

    from PySide6.QtCore import Property
    text = Property(str, getText, setText)
    collapsed = Property(bool, getCollapsed, setCollapsed)


class ctkSliderWidget(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.slider = QSlider(Qt.Horizontal)
        self.spin = QDoubleSpinBox()
        layout.addWidget(self.slider)
        layout.addWidget(self.spin)
        self._min, self._max = 0.0, 1.0

    def _sync(self):
        self.spin.setRange(self._min, self._max)
        self.slider.setRange(0, 100)

    def setMinimum(self, v):
        self._min = v
        self._sync()

    def setMaximum(self, v):
        self._max = v
        self._sync()

    def setValue(self, v):
        self._sync()
        self.spin.setValue(v)
        self.slider.setValue(int(100 * (v - self._min) / max(self._max - self._min, 1e-12)))

    def setSingleStep(self, v):
        self.spin.setSingleStep(v)

    from PySide6.QtCore import Property
    minimum = Property(float, lambda s: s._min, setMinimum)
    maximum = Property(float, lambda s: s._max, setMaximum)
    value = Property(float, lambda s: s.spin.value(), setValue)
    singleStep = Property(float, lambda s: s.spin.singleStep(), setSingleStep)


def render(ui_path: Path, out_dir: Path) -> Path:
    loader = QUiLoader()
    for cls in (qMRMLWidget, qMRMLNodeComboBox, ctkCollapsibleButton, ctkSliderWidget):
        loader.registerCustomWidget(cls)
    f = QFile(str(ui_path))
    f.open(QFile.ReadOnly)
    panel = loader.load(f)
    f.close()
    frame = QWidget()
    layout = QVBoxLayout(frame)
    layout.addWidget(panel)
    frame.resize(460, max(panel.sizeHint().height() + 40, 400))
    frame.show()
    QApplication.processEvents()
    pixmap = frame.grab()
    painter = QPainter(pixmap)
    painter.setPen(QColor("#b00020"))
    painter.setFont(QFont("Sans", 8))
    painter.drawText(pixmap.rect().adjusted(6, 0, -6, -4), Qt.AlignBottom | Qt.AlignLeft,
                     "Layout render of the .ui (PySide6, CTK/MRML stand-ins), not Slicer")
    painter.end()
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / (ui_path.stem + ".png")
    pixmap.save(str(out))
    return out


def main(argv=None) -> int:
    out_dir = Path((argv or sys.argv[1:] or [str(ROOT / "docs" / "screenshots")])[0])
    app = QApplication.instance() or QApplication([])
    for ui in PANELS:
        print(render(ui, out_dir))
    del app
    return 0


if __name__ == "__main__":
    sys.exit(main())
