"""medhub Runner: run a medhub model on the selected volume and load the result as a segmentation.

The Slicer side only: widgets, the volume's files, loading the returned ``.seg.nrrd``. Talking to
medhub (the catalog, submitting, polling, fetching results) lives in ``MedhubRunnerLib``, which
imports nothing from Slicer and is tested in medhub's CI against a real ``medhub serve``.
"""

import os
import tempfile

import qt
import slicer
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)

from MedhubRunnerLib import MedhubClientError, backend_for, read_segments

SETTINGS_LOCATION = "MedhubRunner/Location"
SETTINGS_TOKEN = "MedhubRunner/Token"


class MedhubRunner(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "medhub Runner"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["medhub developers"]
        self.parent.helpText = (
            "Run a published model from the medhub catalog on the selected volume. Give a medhub serve URL "
            "(http://HOST:PORT, with its API token if it has one) or a local medhub executable, pick a model, "
            "press Run. A volume loaded from Slicer's DICOM database is sent as its DICOM files; any other "
            "volume as NIfTI. The result is loaded as a segmentation with medhub's segment names, colours and "
            "SNOMED CT terminology; the DICOM SEG of a DICOM input joins its study in the DICOM database."
        )
        self.parent.acknowledgementText = "medhub: one command from raw DICOM to standard results."


class MedhubRunnerWidget(ScriptedLoadableModuleWidget):
    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        self.logic = MedhubRunnerLogic()
        self.models = []
        self.cancelRequested = False
        form = qt.QFormLayout()
        self.layout.addLayout(form)

        self.locationEdit = qt.QLineEdit(qt.QSettings().value(SETTINGS_LOCATION, "http://127.0.0.1:8000"))
        self.locationEdit.toolTip = "A medhub serve URL (http://HOST:PORT) or a medhub executable (medhub, or its path)"
        form.addRow("medhub:", self.locationEdit)
        self.tokenEdit = qt.QLineEdit(qt.QSettings().value(SETTINGS_TOKEN, ""))
        self.tokenEdit.echoMode = qt.QLineEdit.Password
        self.tokenEdit.toolTip = "API token of the server (medhub serve --token); empty for a local medhub"
        form.addRow("API token:", self.tokenEdit)

        self.refreshButton = qt.QPushButton("Load the model catalog")
        form.addRow(self.refreshButton)
        self.modelCombo = qt.QComboBox()
        form.addRow("Model:", self.modelCombo)

        self.inputSelector = slicer.qMRMLNodeComboBox()
        self.inputSelector.nodeTypes = ["vtkMRMLScalarVolumeNode"]
        self.inputSelector.addEnabled = False
        self.inputSelector.removeEnabled = False
        self.inputSelector.noneEnabled = False
        self.inputSelector.setMRMLScene(slicer.mrmlScene)
        form.addRow("Input volume:", self.inputSelector)

        self.runButton = qt.QPushButton("Run")
        self.cancelButton = qt.QPushButton("Cancel")
        self.cancelButton.enabled = False
        buttons = qt.QHBoxLayout()
        buttons.addWidget(self.runButton)
        buttons.addWidget(self.cancelButton)
        form.addRow(buttons)
        self.progressBar = qt.QProgressBar()
        self.progressBar.setRange(0, 100)
        form.addRow(self.progressBar)
        self.statusLabel = qt.QLabel("")
        self.statusLabel.wordWrap = True
        form.addRow(self.statusLabel)
        self.layout.addStretch(1)

        self.refreshButton.connect("clicked(bool)", self.onRefresh)
        self.runButton.connect("clicked(bool)", self.onRun)
        self.cancelButton.connect("clicked(bool)", self.onCancel)

    def backend(self):
        qt.QSettings().setValue(SETTINGS_LOCATION, self.locationEdit.text)
        qt.QSettings().setValue(SETTINGS_TOKEN, self.tokenEdit.text)
        return backend_for(self.locationEdit.text, token=self.tokenEdit.text or None)

    def onRefresh(self):
        try:
            with slicer.util.tryWithErrorDisplay("Could not load the medhub catalog.", waitCursor=True):
                self.models = self.backend().models()
        except MedhubClientError:
            return
        self.modelCombo.clear()
        for model in self.models:
            self.modelCombo.addItem(model.label, model.id)
        self.statusLabel.text = f"{len(self.models)} models"

    def onProgress(self, message, fraction):
        self.statusLabel.text = message
        if fraction is None:
            self.progressBar.setRange(0, 0)  # busy
        else:
            self.progressBar.setRange(0, 100)
            self.progressBar.value = int(round(fraction * 100))
        slicer.app.processEvents()  # keep the window (and the Cancel button) alive while polling

    def onCancel(self):
        self.cancelRequested = True

    def onRun(self):
        volume = self.inputSelector.currentNode()
        model = self.modelCombo.currentData
        if volume is None or not model:
            slicer.util.errorDisplay("Choose a model (load the catalog first) and an input volume.")
            return
        self.cancelRequested = False
        self.runButton.enabled, self.cancelButton.enabled = False, True
        try:
            with slicer.util.tryWithErrorDisplay("medhub could not run the model.", waitCursor=True):
                backend = self.backend()
                output = tempfile.mkdtemp(prefix=f"medhub-{model}-", dir=slicer.app.temporaryPath)
                files = self.logic.inputFiles(volume, output)
                result = backend.run(model, files, os.path.join(output, "results"), progress=self.onProgress,
                                     should_cancel=lambda: self.cancelRequested)
                names = self.logic.loadResults(result, volume)
                self.statusLabel.text = (f"loaded {len(names)} segments: {', '.join(names)}. Results: {output}"
                                         + ("\n" + "\n".join(result.notes) if result.notes else ""))
        except MedhubClientError:
            pass
        finally:
            self.runButton.enabled, self.cancelButton.enabled = True, False
            self.progressBar.setRange(0, 100)


class MedhubRunnerLogic(ScriptedLoadableModuleLogic):
    def inputFiles(self, volumeNode, scratch):
        """The volume's DICOM files from the database, or the volume saved as NIfTI when it has none."""
        uids = (volumeNode.GetAttribute("DICOM.instanceUIDs") or "").split()
        database = slicer.dicomDatabase
        files = [database.fileForInstance(uid) for uid in uids] if uids and database else []
        if files and all(files):
            return files
        path = os.path.join(scratch, "input.nii.gz")
        if not slicer.util.saveNode(volumeNode, path):
            raise MedhubClientError(f"could not save {volumeNode.GetName()} as NIfTI for medhub")
        return [path]

    def loadResults(self, result, volumeNode):
        """Load every returned .seg.nrrd as a segmentation on the input's geometry; return the segment names."""
        if not result.seg_nrrd:
            raise MedhubClientError("medhub returned no segmentation" + (": " + "; ".join(result.notes)
                                                                         if result.notes else ""))
        names = []
        for path in result.seg_nrrd:
            names += [segment["name"] for segment in read_segments(path)]
            node = slicer.util.loadSegmentation(str(path))
            node.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
            node.CreateClosedSurfaceRepresentation()
        if result.seg and volumeNode.GetAttribute("DICOM.instanceUIDs") and slicer.dicomDatabase:
            from DICOMLib import DICOMUtils  # the DICOM SEG joins its CT's study in the DICOM database

            for folder in sorted({os.path.dirname(str(path)) for path in result.seg}):
                DICOMUtils.importDicom(folder, slicer.dicomDatabase)
        return names


class MedhubRunnerTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_non_dicom_volume_is_sent_as_nifti()
        self.test_location_picks_the_backend()

    def test_non_dicom_volume_is_sent_as_nifti(self):
        import numpy as np

        volume = slicer.util.addVolumeFromArray(np.zeros((4, 5, 6), dtype=np.int16), name="blank")
        scratch = tempfile.mkdtemp(dir=slicer.app.temporaryPath)
        (path,) = MedhubRunnerLogic().inputFiles(volume, scratch)
        self.assertTrue(path.endswith(".nii.gz") and os.path.getsize(path) > 0)

    def test_location_picks_the_backend(self):
        self.assertEqual(type(backend_for("http://127.0.0.1:8000")).__name__, "ServerBackend")
        with self.assertRaises(MedhubClientError):
            backend_for("")
