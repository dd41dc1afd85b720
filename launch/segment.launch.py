"""Start instructsam_ros segment_node: `ros2 launch instructsam_ros segment.launch.py`.

Examples:
  ros2 launch instructsam_ros segment.launch.py image:=/camera/color/image_raw
  ros2 launch instructsam_ros segment.launch.py namespace:=front image:=/front/image_raw/compressed \
      use_compressed:=true device:=cuda:0 threshold:=0.4
Several cameras on one model (one node; topics <camera>/image, <camera>/segmentation, ...):
  ros2 launch instructsam_ros segment.launch.py cameras:=front,wrist \
      images:=/front/color/image_raw,/wrist/color/image_raw device:=cuda
3-D positions from an aligned depth image (per instance: Instance.location; topics depth/image,
depth/camera_info; the CameraInfo defaults to the camera_info next to the depth topic):
  ros2 launch instructsam_ros segment.launch.py image:=/camera/color/image_raw \
      depth:=/camera/aligned_depth_to_color/image_raw
  ros2 launch instructsam_ros segment.launch.py cameras:=front,wrist images:=... depths:=/front/depth,/wrist/depth
Then publish an instruction (latched) for every camera, or for one camera on <camera>/instruction:
  ros2 topic pub --once --qos-durability transient_local <namespace>/instruction std_msgs/String \
      "data: 'segment the cups'"

Every process of the pipeline should use the same Fast DDS large-data profile (the camera
driver too): `fastdds_profile` is exported for this launch under the name this distribution's
Fast DDS reads (FASTDDS_DEFAULT_PROFILES_FILE on Kilted, FASTRTPS_DEFAULT_PROFILES_FILE on Humble
and Jazzy). For frames over 16 MiB (3840x2160 rgb8 and larger) pass
config/fastdds_large_frames.xml.
Parameters not exposed as launch arguments are in config/segment_node.yaml (`params_file`).
Kept thin on purpose: everything it sets is a parameter the node declares (tested).
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

from instructsam_ros.segment_node.cameras import depth_remappings, image_remappings, parse_camera_argument
from instructsam_ros.dds.profiles import profile_variables
from instructsam_ros.segment_node.parameters import launch_value

# Launch arguments that are node parameters of the same name.
NODE_ARGUMENTS = ("model", "device", "sam3_config", "inference_layout", "use_compressed", "threshold", "autostart")


def _segment_node(context):
    """The node, with the camera list and the image remappings read from the arguments
    (cameras:=front,wrist; images:=/front/...,/wrist/...; one camera: image:=...)."""
    cameras = parse_camera_argument(LaunchConfiguration("cameras").perform(context))
    remappings = image_remappings(cameras, LaunchConfiguration("images").perform(context),
                                  LaunchConfiguration("image").perform(context))
    depth = depth_remappings(cameras, LaunchConfiguration("depth").perform(context),
                             LaunchConfiguration("depth_info").perform(context),
                             LaunchConfiguration("depths").perform(context),
                             LaunchConfiguration("depth_infos").perform(context))
    # Checked here as the node checks them, so a bad value stops the launch with the node's reason
    # instead of a node that starts with its default; strings stay strings (model:=yes is a path).
    overrides = {}
    for name in NODE_ARGUMENTS:
        value = launch_value(name, LaunchConfiguration(name).perform(context))
        overrides[name] = ParameterValue(value, value_type=str) if isinstance(value, str) else value
    if cameras:  # an empty list has no type in ROS parameters: no camera listed is the default
        overrides.update({"cameras": cameras})
    if depth:  # a depth topic given: 3-D on (otherwise the params file decides, false by default)
        overrides.update({"depth": True})
    return [
        Node(
            package="instructsam_ros",
            executable="segment_node",
            name="segment_node",
            namespace=LaunchConfiguration("namespace"),
            output="screen",
            emulate_tty=True,
            parameters=[LaunchConfiguration("params_file"), overrides],
            remappings=remappings + depth,
        )
    ]


def generate_launch_description():
    config = PathJoinSubstitution([FindPackageShare("instructsam_ros"), "config"])
    arguments = [
        DeclareLaunchArgument("model", default_value="default", description="model directory, or 'default' (embedded model)"),
        DeclareLaunchArgument("device", default_value="auto", description="auto, cpu, cuda, cuda:N"),
        DeclareLaunchArgument("sam3_config", default_value="", description="directory with SAM3's config.json (empty: the model's own)"),
        DeclareLaunchArgument("inference_layout", default_value="", description="release or trained (empty: the model's config.json)"),
        DeclareLaunchArgument("image", default_value="image", description="input image topic of the single camera (remaps 'image' and 'image/compressed')"),
        DeclareLaunchArgument("cameras", default_value="", description="camera names, e.g. front,wrist: one node serves them all (topics <camera>/image, ...); empty: one camera"),
        DeclareLaunchArgument("images", default_value="", description="with cameras: one input image topic per camera, in the same order (empty: <camera>/image)"),
        DeclareLaunchArgument("depth", default_value="", description="aligned depth image topic of the single camera (16UC1 or 32FC1), a topic, not true/false; turns 3-D on (empty: no depth)"),
        DeclareLaunchArgument("depth_info", default_value="", description="CameraInfo of that depth image (empty: camera_info next to the depth topic)"),
        DeclareLaunchArgument("depths", default_value="", description="with cameras: one aligned depth image topic per camera, in the same order; turns 3-D on"),
        DeclareLaunchArgument("depth_infos", default_value="", description="with cameras: one depth CameraInfo topic per camera (empty: camera_info next to each depth topic)"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node and its topics"),
        DeclareLaunchArgument("use_compressed", default_value="false", description="subscribe to <image>/compressed"),
        DeclareLaunchArgument("threshold", default_value="0.3", description="minimum instance score"),
        DeclareLaunchArgument("autostart", default_value="true", description="configure and activate on start"),
        DeclareLaunchArgument("params_file", default_value=PathJoinSubstitution([config, "segment_node.yaml"]), description="parameter YAML"),
        DeclareLaunchArgument("fastdds_profile", default_value=PathJoinSubstitution([config, "fastdds_large_data.xml"]), description="Fast DDS profile: fastdds_large_data.xml (16 MiB messages) or fastdds_large_frames.xml (64 MiB)"),
    ]
    return LaunchDescription(
        [
            *arguments,
            *[SetEnvironmentVariable(name, LaunchConfiguration("fastdds_profile")) for name in profile_variables()],
            OpaqueFunction(function=_segment_node),
        ]
    )
