"""A web viewer of a trained scene, on viser (nerfstudio's viewer library): move the camera, type phrases.

    python -m laser.viewer run=runs/synthetic [port=8080] [host=127.0.0.1] [height=144] [device=auto]

Open the printed address in a browser. The scene is rendered from the browser's camera at ``height`` rows (the
width follows the window's shape) and shown as the viewer's background. The panel has a text box for phrases
(several separated by ';', as in LERF's viewer), a threshold on the normalised relevancy, a choice between RGB,
relevancy (the first phrase's map over the render, where it reaches the threshold) and segmentation (each pixel the
phrase of highest score among those typed, where its normalised relevancy reaches the threshold), and the scene's
classes as one-click queries. Renders run on one worker thread; camera moves that arrive while it renders are merged
into the next frame.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import viser
import viser.transforms as vtf

from laser.data.rays import average_pose
from laser.errors import ConfigError
from laser.evaluation.metrics import normalized_relevancy
from laser.evaluation.pictures import class_palette, relevancy_map, segmentation_overlay, to_uint8
from laser.query import SceneQuery, segmentation
from laser.tools import MISSING, parse_options, run_tool

MODES = ("RGB", "Relevancy", "Segmentation")
OPENCV_FROM_OPENGL = np.diag([1.0, -1.0, -1.0])   # viser's cameras look down +z with y down; ours down -z, y up


@dataclass
class Frame:
    """What a client was last sent: the picture ``[h, w, 3] uint8`` and what it shows."""

    picture: np.ndarray
    mode: str
    phrases: list[str]
    threshold: float
    camera: tuple[torch.Tensor, float, float]   # c2w [3, 4], aspect, vertical fov: Viewer.picture's arguments
    number: int                     # frames sent to this client so far


def c2w_of(camera) -> torch.Tensor:
    """Our ``[3, 4]`` OpenGL camera-to-world of a viser camera (wxyz, position)."""
    rotation = vtf.SO3(np.asarray(camera.wxyz)).as_matrix() @ OPENCV_FROM_OPENGL
    return torch.from_numpy(np.concatenate([rotation, np.asarray(camera.position)[:, None]], axis=1)).float()


class Viewer:
    """The viser server, its panel and the render worker over a :class:`~laser.query.SceneQuery`."""

    def __init__(self, scene_query: SceneQuery, host: str = "127.0.0.1", port: int = 8080, height: int = 144):
        if height < 8:
            raise ConfigError("height", f"renders need at least 8 rows, not {height}")
        self.query, self.height = scene_query, height
        scene = scene_query.scene
        self.start_pose = scene.c2w[scene_query.views()[0]]
        self.start_fov = 2 * math.atan(scene.height / (2 * scene.fy))
        self.look_depth = scene_query.focus_depth(self.start_pose)
        self.server = viser.ViserServer(host=host, port=port, verbose=False)
        self.server.scene.set_up_direction(tuple(average_pose(scene.c2w.double().numpy())[:, 1]))
        gui = self.server.gui
        self.phrase_box = gui.add_text("Phrases", initial_value="", hint="several separated by ';'")
        self.threshold = gui.add_slider("Threshold", min=0.0, max=1.0, step=0.01, initial_value=0.5)
        self.mode = gui.add_dropdown("Show", MODES, initial_value="RGB")
        with gui.add_folder("Classes"):
            for name in scene_query.classes:
                gui.add_button(name).on_click(lambda _, name=name: self.ask(name))
        for handle in (self.phrase_box, self.threshold, self.mode):
            handle.on_update(lambda _: self.refresh())
        self.frames: dict[int, Frame] = {}
        self._dirty: set[int] = set()
        self._wake = threading.Condition()
        self._running = True
        self._worker = threading.Thread(target=self._work, name="laser-viewer-render", daemon=True)
        self._worker.start()
        self.server.on_client_connect(self._connect)

    @property
    def port(self) -> int:
        return self.server.get_port()

    def ask(self, phrase: str) -> None:
        """One-click query: the phrase alone, shown as relevancy unless a phrase view is already chosen."""
        self.phrase_box.value = phrase
        if self.mode.value == "RGB":
            self.mode.value = "Relevancy"
        self.refresh()

    def _connect(self, client: viser.ClientHandle) -> None:
        rotation = self.start_pose[:, :3].double().numpy() @ OPENCV_FROM_OPENGL
        with client.atomic():
            client.camera.fov = self.start_fov
            client.camera.wxyz = vtf.SO3.from_matrix(rotation).wxyz
            client.camera.position = self.start_pose[:, 3].double().numpy()
            client.camera.look_at = (self.start_pose[:, 3] - self.start_pose[:, 2] * self.look_depth).double().numpy()
        client.camera.on_update(lambda _: self.refresh(client.client_id))
        self.refresh(client.client_id)

    def refresh(self, client_id: int | None = None) -> None:
        """Render a client (None: every client) again, on the worker."""
        with self._wake:
            self._dirty |= {client_id} if client_id is not None else set(self.server.get_clients())
            self._wake.notify()

    def _work(self) -> None:
        while True:
            with self._wake:
                self._wake.wait_for(lambda: self._dirty or not self._running)
                if not self._running:
                    return
                dirty, self._dirty = self._dirty, set()
            clients = self.server.get_clients()
            for client_id in dirty:
                if client_id in clients:
                    self._render(clients[client_id])

    def picture(self, c2w: torch.Tensor, aspect: float, fov: float, mode: str, texts: list[str],
                threshold: float) -> np.ndarray:
        """The ``[height, width, 3] uint8`` picture of camera ``c2w`` (vertical ``fov`` in radians) in ``mode``."""
        stage = self.query.stage
        height = self.height
        width = max(8, round(height * aspect))
        focal = height / (2 * math.tan(fov / 2))
        rays = self.query.scene.camera_rays(c2w, height, width, focal, focal).to(stage.device)
        rendered = stage.render_view(rays)
        rgb = rendered["rgb"].reshape(height, width, 3).clamp(0, 1).cpu()
        plain = to_uint8(rgb)
        if mode == "RGB" or not texts:
            return plain
        with torch.no_grad():
            scores = stage.query_scores(rendered, self.query.embed(texts)).reshape(height, width, -1).cpu()
        if mode == "Relevancy":
            level = normalized_relevancy(scores[..., :1])[..., 0]
            heat = relevancy_map(scores[..., 0])
            return np.where((level >= threshold).numpy()[..., None], heat, plain)
        return segmentation_overlay(rgb, segmentation(scores, threshold), class_palette(len(texts)))

    def _render(self, client: viser.ClientHandle) -> None:
        camera = client.camera
        # What is typed so far; a half-typed list such as "mug;" is its phrases.
        texts = [t.strip() for t in self.phrase_box.value.split(";") if t.strip()]
        mode, threshold = self.mode.value, float(self.threshold.value)
        view = (c2w_of(camera), camera.aspect, camera.fov)
        picture = self.picture(*view, mode, texts, threshold)
        client.scene.set_background_image(picture, format="png")
        previous = self.frames.get(client.client_id)
        self.frames[client.client_id] = Frame(picture, mode, texts, threshold, view,
                                              previous.number + 1 if previous else 1)

    def close(self) -> None:
        with self._wake:
            self._running = False
            self._wake.notify()
        self._worker.join(timeout=10)
        self.server.stop()


@dataclass
class ViewerOptions:
    run: str = MISSING
    port: int = 8080
    host: str = "127.0.0.1"        # 0.0.0.0 to serve other machines
    height: int = 144              # rows rendered per frame
    device: str = "auto"


def main(argv: Sequence[str]) -> None:
    options = parse_options(ViewerOptions, argv)
    viewer = Viewer(SceneQuery(options.run, options.device, cache=False), options.host, options.port, options.height)
    print(f"laser viewer of {options.run}: http://{options.host}:{viewer.port} (Ctrl-C stops)", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        viewer.close()


if __name__ == "__main__":
    run_tool(main)
