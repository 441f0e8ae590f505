"""ament_python package: `colcon build` on a ROS 2 machine, `pip install` into a venv elsewhere."""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "sirenpose_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.rviz") + glob("config/*.xml")),
        (f"share/{PACKAGE}/models", glob("models/*")),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="sirenpose_ros developers",
    maintainer_email="dev@sirenpose.invalid",
    description="Real-time monocular VO with dense dynamic point clouds for ROS 2 (SirenPose).",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            f"sirenpose_node = {PACKAGE}.ros.node:main",
            f"sirenpose_replay = {PACKAGE}.tools.replay:main",
            f"sirenpose_offline = {PACKAGE}.tools.offline:main",
            f"sirenpose_synth = {PACKAGE}.tools.synth:main",
            f"sirenpose_eval = {PACKAGE}.tools.evaluate:cli",
            f"sirenpose_demo = {PACKAGE}.tools.demo:main",
            f"sirenpose_soak = {PACKAGE}.tools.soak:main",
            f"sirenpose_accuracy = {PACKAGE}.tools.accuracy:main",
            f"sirenpose_real = {PACKAGE}.tools.real_data:main",
            f"sirenpose_export_models = {PACKAGE}.tools.export_models:main",
            f"sirenpose_benchmark = {PACKAGE}.tools.benchmark:main",
        ],
    },
)
